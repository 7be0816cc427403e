"""Task families (DESIGN.md section 3) and their Gymnasium registration under the ``rkmeta/`` namespace."""
