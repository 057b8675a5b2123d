"""A Lustre stand-in for tests: a simulated MDT (``mdt``) that is the HSM
authority of one simfs tree, a stand-in liblustreapi in C
(``liblustreapi_standin.c``, compiled by ``build``) that talks to it, and
the wire framing both speak (``protocol``).

Nothing here is imported by the product: it exists so that the path
``lfs hsm_* -> MDT -> copytool -> llapi_hsm_action_* -> HSM state`` runs for
real on machines without Lustre.
"""
