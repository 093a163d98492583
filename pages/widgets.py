"""Widgets the pages share (layout only; every number comes from the effnet library)."""

from __future__ import annotations

import streamlit as st


def linked_number(label: str, key: str, low: float, high: float, step: float, default: float,
                  help: str | None = None) -> float:
    """A slider and a number input bound to one value ``st.session_state[key]``."""
    if key not in st.session_state:
        st.session_state[key] = default
    st.session_state.setdefault(f"{key}_slider", st.session_state[key])
    st.session_state.setdefault(f"{key}_input", st.session_state[key])

    def copy_from(source: str) -> None:
        value = st.session_state[source]
        st.session_state[key] = st.session_state[f"{key}_slider"] = st.session_state[f"{key}_input"] = value

    left, right = st.columns([3, 1], vertical_alignment="bottom")
    left.slider(label, low, high, step=step, key=f"{key}_slider", help=help,
                on_change=copy_from, args=(f"{key}_slider",))
    right.number_input(label, low, high, step=step, key=f"{key}_input", label_visibility="collapsed",
                       on_change=copy_from, args=(f"{key}_input",), format="%.2f")
    return float(st.session_state[key])


def human(n: float) -> str:
    """1234567 -> '1.23 M' (for metric tiles)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"
