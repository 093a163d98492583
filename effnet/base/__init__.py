"""The shared-server safety and files: nothing here knows what a model or a run is.

Reading and writing files that matter (atomic, bounded, never through a link: ``files``), the JSON schemas of every
file a run folder holds (``schemas``), unpacking zips that trust nothing (``safezip``), who may do what on a shared
server and how much (``access``), the teacher's sign-in (``signin``), locks and detached processes (``locks``, ``processes``), the one lifecycle of a
detached task, a run or a compression (``tasks``), and text shown to people (``text``). Every other layer stands on these, so each rule here is the one place it is written.

May import: nothing of effnet.
"""
