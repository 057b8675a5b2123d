"""Real Lustre: the pure codec for the MDT's HSM structures (``hal``), the
ctypes binding over liblustreapi (``api``) and the C prototypes that binding
loads (``prototypes``).

Importing this package never loads liblustreapi: ``api.LustreApi`` loads it
on first use.
"""
