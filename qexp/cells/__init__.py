"""The machinery of one measured cell: loading the weights, evaluating a model, the cell's cache key, the provenance
every result carries, and the ``result.json`` record itself."""
