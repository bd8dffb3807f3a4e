"""Real servers for the integration tests, started once per pytest session.

- ``servers.Servers``: DNS stub + 3-node ejabberd cluster + Prosody, with test accounts.
- ``fixtures.servers``: the session fixture (import it into a conftest or test module).
- ``ejabberd``, ``prosody``, ``dnsstub``, ``certs``: the parts, usable on their own.
- ``client.xmpp_session``: a bounded slixmpp login for tests.
- ``bind.Bind`` / ``bind.bind_primary``: Debian's BIND 9 as an RFC 2136 primary on
  127.0.4.54 with a ``tsig-keygen`` key (module fixture; its own reaper).
- ``reaper``: kills what a SIGKILLed run left behind; ``proc``: process/polling helpers.
"""
