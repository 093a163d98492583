"""The images a run learns from: CIFAR-100 in its official format, your own class folders, uploads.

``cifar`` reads the official archive (and fails clearly offline), ``folder`` turns an uploaded zip of class folders
into a dataset (staged, checked, counted once), ``images`` decodes any upload with bounded memory.

May import: effnet.base.
"""
