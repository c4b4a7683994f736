"""tribridge: link chat rooms across several Matrix homeservers, one per messaging network."""

__version__ = "0.1.0"
