"""effnet-lab: ``streamlit run app.py``. Navigation only; each page lives in pages/."""

import streamlit as st

st.set_page_config(page_title="effnet-lab", page_icon=":material/schema:", layout="wide")

navigation = st.navigation([
    st.Page("pages/explorer.py", title="Scaling explorer", icon=":material/tune:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/results.py", title="Results", icon=":material/leaderboard:"),
    st.Page("pages/cam.py", title="Class activation maps", icon=":material/visibility:"),
])
navigation.run()
