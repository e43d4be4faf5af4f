"""On-disk formats, one package per format; they know bytes and files, nothing about containers."""
