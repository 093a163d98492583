"""Widgets the pages share (layout only; every number comes from the effnet library)."""

from __future__ import annotations

import streamlit as st

from effnet.access import Caller, is_teacher_password, new_owner_token, readonly, teacher_password, valid_owner_token


def linked_number(label: str, key: str, low: float, high: float, step: float, default: float,
                  help: str | None = None) -> float:
    """A slider and a number input bound to one value ``st.session_state[key]``."""
    if key not in st.session_state:
        st.session_state[key] = default
    st.session_state.setdefault(f"{key}_slider", st.session_state[key])
    st.session_state.setdefault(f"{key}_input", st.session_state[key])

    def copy_from(source: str) -> None:
        value = st.session_state[source]
        st.session_state[key] = st.session_state[f"{key}_input"] = value
        st.session_state[f"{key}_slider"] = min(max(value, low), high)  # the slider cannot show what is out of range

    left, right = st.columns([3, 1], vertical_alignment="bottom")
    left.slider(label, low, high, step=step, key=f"{key}_slider", help=help,
                on_change=copy_from, args=(f"{key}_slider",))
    # No bounds on the box: a value out of range goes through and the spec says why it is refused,
    # instead of the box turning red while the numbers silently stay put.
    right.number_input(label, step=step, key=f"{key}_input", label_visibility="collapsed",
                       on_change=copy_from, args=(f"{key}_input",), format="%.2f")
    return float(st.session_state[key])


def human(n: float) -> str:
    """1234567 -> '1.23 M' (for metric tiles)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"


def secret(name: str) -> str | None:
    """A value from Streamlit's secrets (``.streamlit/secrets.toml``), or None when there is none."""
    try:
        value = st.secrets.get(name)
    except (FileNotFoundError, KeyError, ValueError):  # no secrets file, or an unreadable one
        return None
    return str(value) if value else None


def caller() -> Caller:
    """This browser: its owner token (kept in the page URL, so a reload keeps it) and whether it is the teacher.

    Called by app.py on every run: navigating between pages clears the URL's parameters, and this
    puts the token back.
    """
    state = st.session_state
    token = state.get("owner")
    if not valid_owner_token(token):
        token = st.query_params.get("owner")
        token = token if valid_owner_token(token) else new_owner_token()
        state["owner"] = token
    if st.query_params.get("owner") != token:
        st.query_params["owner"] = token
    teacher = state.get("teacher", False) or teacher_password(secret("teacher_password")) is None
    return Caller(token, teacher)


def teacher_sign_in(who: Caller) -> None:
    """Sidebar: sign in as the teacher (only when the operator set a password), or see that one is signed in."""
    expected = teacher_password(secret("teacher_password"))
    if readonly():
        st.sidebar.info("Read-only demo: explore, read results and make CAMs; nothing can be started or deleted.")
        return
    if expected is None:
        return  # a single user: everybody is the teacher
    if who.teacher:
        st.sidebar.caption("Signed in as the teacher: you can manage every run.")
        if st.sidebar.button("Sign out", key="teacher_sign_out"):
            st.session_state["teacher"] = False
            st.rerun()
        return
    with st.sidebar.form("teacher_form", border=False):
        given = st.text_input("Teacher password", type="password", key="teacher_password_input")
        if st.form_submit_button("Sign in as the teacher"):
            if is_teacher_password(given, expected):
                st.session_state["teacher"] = True
                st.rerun()
            st.error("Wrong password.")


def chart(figure, key: str, where=st, *, note: str) -> None:
    """A chart as the lab draws it: full width, its own large fonts (Streamlit's theme would shrink them), and
    one line under it saying what it shows and what to look for (``note``; every chart has one)."""
    where.plotly_chart(figure, width="stretch", theme=None, key=key)
    where.caption(note)
