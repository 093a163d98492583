"""effnet-lab: ``streamlit run app.py``. Navigation only; each page lives in pages/."""

import streamlit as st

from pages.widgets import caller, teacher_sign_in

st.set_page_config(page_title="effnet-lab", page_icon=":material/schema:", layout="wide")

navigation = st.navigation([
    st.Page("pages/explorer.py", title="Scaling explorer", icon=":material/tune:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/results.py", title="Results", icon=":material/leaderboard:"),
    st.Page("pages/cam.py", title="Class activation maps", icon=":material/visibility:"),
])
who = caller()  # every run: keeps this browser's owner token in the URL across page switches
teacher_sign_in(who)
navigation.run()
