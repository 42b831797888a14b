"""Training recipes: one module per method (``fullrank``, ``color``, ``refrag``, ...).

Each recipe module offers ``add_parser(subparsers)`` (adds its ``longread train <name>``
sub-command) and ``run(args)``, plus ``main(argv)`` for running it directly. Recipes import
torch/transformers/peft only inside functions so that importing this package stays cheap.
"""

__all__: list[str] = []
