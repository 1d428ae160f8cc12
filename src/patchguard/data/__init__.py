"""Data: records and image reading, the layouts of every data set (and a user's own folders), the
torch datasets, pseudo anomalies, automatic foreground masks and data set downloads.

``records`` < ``images`` < ``layouts`` < ``pseudo_anomaly`` < ``datasets``; ``foreground`` and
``download`` build on the layouts. Nothing here imports torch at module level except
``datasets`` and ``foreground``, so listing or checking a layout stays fast.
"""
