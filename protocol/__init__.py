"""Wire protocol shared by node and host."""
