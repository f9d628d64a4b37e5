"""Multi-host test fleet on one machine: network namespaces, shaped links and real services.

Parts, one job each:

* :mod:`netns`      a private switch namespace with a Linux bridge and N host namespaces on veth links,
                    optionally shaped with ``tc`` (the demo fleet boots containers into the same namespaces);
* :mod:`httpd`      a threaded HTTP server with Range support and byte counters (web seed, central push);
* :mod:`tracker`    Debian's opentracker in a namespace, with its whitelist of approved info-hashes;
* :mod:`bare_peer`  a bare libtorrent session (reference peer, and the corrupting peer of the swarm tests);
* :mod:`swarm`      one engine per host namespace plus seed, tracker and web seed, with helpers to add a
                    torrent everywhere and wait for completion.

Everything needs root and ``iproute2``; all addresses are in 198.18.0.0/15 inside namespaces created and
removed by the fleet itself, so nothing here touches the host's own network.
"""
