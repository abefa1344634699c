"""Dataset importers (DESIGN.md §6): one parser module per format, then ``validate``,
``stats`` and ``pipeline`` (parse -> validate -> upload -> register).

Kept import-light on purpose: ``infra.datasets`` imports ``stats`` from here.
"""
