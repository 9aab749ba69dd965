"""The paper dress rehearsal's stand-ins: tiny models of each paper architecture with their family's
tokenizer (``models``), data in the schema of each training set and paper task (``data``), and the
driver that runs a shipped ``sweeps/paper/`` file on them through ``--set`` overrides (``rehearse``).
"""
