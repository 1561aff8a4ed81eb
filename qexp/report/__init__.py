"""``python -m qexp.report``: tables, plots and the generated blocks of the README and docs/ from quantization sweeps.

Collects every ``result.json`` below the given sweep directories (a cell run twice counts once:
the newest wins), or reads back a ``results.csv`` it wrote (``--from-csv``), and writes
``results.csv`` (every field), ``results.md`` (the tables) and PNG plots; with ``--readme`` it
also rewrites the generated blocks of the pages given (files or folders: ``README.md docs``).
Failed and unsupported cells are shown as such.
Running it again on the same inputs rewrites the same files.

- ``cells.py``: collecting, reading and merging cells; what makes two rows one cell; their names
- ``selection.py``: which cells each table and figure shows, shared by all of them
- ``tables.py``: Markdown tables and ``results.md``
- ``noise.py``: what one image and one standard error are worth; McNemar's test between cells
- ``plots.py``: the figures
- ``readme.py``: the generated blocks of the README and docs/ pages
- ``cli.py``: the command line
- ``recipes.py``: ``python -m qexp.report.recipes``, the table of training recipes compared on validation
"""

from qexp.report.cli import main, report, report_from_csv

__all__ = ["main", "report", "report_from_csv"]
