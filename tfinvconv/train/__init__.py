"""The training system: `tfinvconv-train --preset digits` (or `python -m tfinvconv.train`; see
its --help). Installed with the library, but not imported by `import tfinvconv`."""
