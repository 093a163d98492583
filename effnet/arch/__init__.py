"""The model description and its arithmetic: what a network is, before any data.

Compound scaling as pure arithmetic (``scaling``: the paper's rounding rules and Table 1 as rows, one ``Block``
shape), the model card that counts it (``card``), the conventional networks the study cites (``baselines``), a spec
of either kind (``specs``), the torch modules built from it (``model``), input preprocessing (``preprocess``) and
torchvision's published numbers (``zoo``). ``scaling`` and ``card`` import no torch, so the explorer is instant.

May import: effnet.base.
"""
