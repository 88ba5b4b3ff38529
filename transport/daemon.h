/*
 * daemon.h — `fieldmesh run`: the node core driven by a libevent loop (one loop, no threads)
 * over TCP (IPv4 and IPv6), mDNS discovery and the control socket.
 */
#ifndef FM_DAEMON_H
#define FM_DAEMON_H

#include <stdio.h>

/* Runs a node on the store in dir until SIGINT or SIGTERM; argv holds the `run` options.
 * Returns the exit status (0 after a clean shutdown, 1 on a failure to start, 2 usage). */
int fm_daemon_main(const char *dir, int argc, char **argv, FILE *err);

#endif
