"""Live avatar server over WebRTC (aiohttp + aiortc).

* ``rt_portrait.server.app``: ``ServerConfig``, ``build_app(config)``, the routes (page,
  ``/offer``, WHIP ``/whip``, WHEP ``/whep/<viewer>``, controls, uploads, ``/stats``;
  sessions are private: see its docstring for the capabilities),
  ``add_arguments(parser)`` / ``run_from_args(args)`` for the ``serve`` command.
* ``rt_portrait.server.session``: one session's state (newest-frame worker, degradation,
  stats, the avatar tracks it feeds) and the loopback-only ICE switch used by tests.

Importing this package does not import aiortc; import the submodules.
"""
