"""effnet-lab's pages (served by ``app.py``): navigation, this browser's identity and the teacher's sign-in; pages
live in views/.

Not in pages/: Streamlit treats a pages/ folder beside the entry script as an old-style multipage app and,
on a deep link or a rerun, runs the page file without this script (no wide layout, no sign-in, a sidebar
listing every file)."""

from pathlib import Path

import streamlit as st

from views.widgets import caller, projector_style, teacher_sign_in

# The tab's icon is a file served by this server: a ":material/...:" icon is fetched from Google's font CDN, which
# an offline classroom logs as an error on every page.
st.set_page_config(page_title="effnet-lab", page_icon=str(Path(__file__).parent / "views" / "icon.png"), layout="wide")

navigation = st.navigation([
    st.Page("views/lesson.py", title="Lesson", icon=":material/school:", default=True),
    st.Page("views/explorer.py", title="Scaling explorer", icon=":material/tune:"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/results.py", title="Results", icon=":material/leaderboard:"),
    st.Page("views/cam.py", title="Class activation maps", icon=":material/visibility:"),
    st.Page("views/study.py", title="Studies", icon=":material/science:"),
    st.Page("views/compress.py", title="Compress", icon=":material/compress:"),
])
projector_style()
teacher_sign_in(caller(), here=f"/{navigation.url_path}")  # signing in or out comes back to this page
navigation.run()
