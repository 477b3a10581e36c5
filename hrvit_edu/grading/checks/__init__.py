"""Every chapter's questions; importing this package registers them all (book order)."""
from . import capstone, expedite, hiremlp, hrvit, preface, rtformer, transnext  # noqa: F401
