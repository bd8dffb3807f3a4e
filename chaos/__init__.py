"""The chaos suite (issue 14). `chaos.toxiproxy` is its bundled Toxiproxy 2.x server."""
