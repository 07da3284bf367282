"""intrada_pl."""
