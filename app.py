"""effnet-lab's server: ``streamlit run app.py``.

The pages are ``lab.py`` (navigation, this browser's identity, the teacher's sign-in link) and ``views/``;
this file adds the lab's own routes beside Streamlit's (``views/routes.py``): the signed owner cookie every
browser gets, the teacher's sign-in page, and downloads streamed from disk; and it frees the uploads of closed
tabs (``views/uploads.py``). ``streamlit run app.py`` finds ``app`` below and serves it (Streamlit's ``st.App``),
with every ``--server.*`` flag as usual.
"""

import streamlit as st

from views.routes import middleware, routes
from views.uploads import start_sweeper

start_sweeper()
app = st.App("lab.py", routes=routes(), middleware=middleware())
