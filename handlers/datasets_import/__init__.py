"""Dataset importers (DESIGN.md §6): one parser module per format, then ``validate``,
``stats`` and ``pipeline`` (parse -> validate -> upload -> register).

Kept import-light on purpose: ``handlers.datasets_import.register`` imports ``stats`` from here.
"""
