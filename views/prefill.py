"""One page opening another, filled in: the only place that knows another page's widget keys and option labels.

The explorer and the Train page read their mode labels, tab names and keys from here, and the Lesson and Studies
pages ask for a ``Prefill``; so renaming a label or a key is one edit, and no page writes another's strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

EXPLORER, TRAIN = "views/explorer.py", "views/train.py"
# The explorer's model radio and tabs (key "mode" and "explorer_tab").
OFFICIAL_MODE, CUSTOM_MODE = "Official (B0-B7, V2)", "Custom φ, α, β, γ"
TABS = ("Stages", "Compare two specs", "Scaling curves", "Scaling methods", "Speed on this machine")
METHODS_TAB = "Scaling methods"


@dataclass(frozen=True)
class Prefill:
    """What the opened page should show: a custom spec (φ and the bases), and for the explorer, which tab."""

    phi: float | None = None
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    explorer_tab: str | None = None

    def write(self) -> None:
        """Into this session's state, as both pages read it (usable as a button's ``on_click``)."""
        state = st.session_state
        if self.explorer_tab is not None:
            state.explorer_tab = self.explorer_tab
        if self.phi is None:
            return
        coefficients = dict(phi=self.phi, alpha=self.alpha, beta=self.beta, gamma=self.gamma)
        state.update(mode=CUSTOM_MODE, **coefficients)  # the explorer
        for key in coefficients:  # its linked slider and box take the new value
            state.pop(f"{key}_slider", None)
            state.pop(f"{key}_input", None)
        # The Train page: exactly this spec, no official variant or baseline beside it.
        state.update(t_custom=True, t_variants=[], t_baselines=[],
                     **{f"t_c_{key}": value for key, value in coefficients.items()})


def open_page(page: str, prefill: Prefill) -> None:
    """Fill ``page``'s widgets with ``prefill`` and open it."""
    prefill.write()
    st.switch_page(page)
