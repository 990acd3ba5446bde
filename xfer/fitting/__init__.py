"""The fitting core: options -> prepare -> plan -> runner -> loop (+ hooks) -> evaluate -> run folder.

Import from the modules (`xfer.fitting.fit.fit`, `xfer.fitting.prepare.prepare`), or use the package's top level
(`xfer.fit`, `xfer.prepare`).
"""
