"""What server and client share and must agree on byte for byte: the payload format and its codecs, pools
and their identity, the error tree, the task schemas, signing, the networks both sides train and the probe.

Nothing here imports from ``plada.server`` or ``plada.client``; both import from here.
"""
