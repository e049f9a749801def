"""Where agents run: in this process (the default) or across a Ray cluster (``ray``)."""
