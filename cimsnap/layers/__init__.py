"""Windows image layers: tar -> CimFS layer (and back), hives, utility VM, image unpack.

(The full API list is completed as the modules land.)
"""
