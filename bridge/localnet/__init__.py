"""A local network of real Synapse homeservers, for `tribridge demo` and the tests.

One launcher, used by both (../shared/design.md): it writes each homeserver's config, starts them
on loopback ports, and writes a tribridge config whose registrations they load.
"""
