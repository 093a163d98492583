"""effnet-lab's pages (served by ``app.py``): navigation, this browser's identity and the teacher's sign-in; pages
live in views/.

Not in pages/: Streamlit treats a pages/ folder beside the entry script as an old-style multipage app and,
on a deep link or a rerun, runs the page file without this script (no wide layout, no sign-in, a sidebar
listing every file)."""

import streamlit as st

from views.widgets import caller, teacher_sign_in

st.set_page_config(page_title="effnet-lab", page_icon=":material/schema:", layout="wide")

teacher_sign_in(caller())
navigation = st.navigation([
    st.Page("views/lesson.py", title="Lesson", icon=":material/school:", default=True),
    st.Page("views/explorer.py", title="Scaling explorer", icon=":material/tune:"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/results.py", title="Results", icon=":material/leaderboard:"),
    st.Page("views/cam.py", title="Class activation maps", icon=":material/visibility:"),
    st.Page("views/study.py", title="Studies", icon=":material/science:"),
    st.Page("views/compress.py", title="Compress", icon=":material/compress:"),
])
navigation.run()
