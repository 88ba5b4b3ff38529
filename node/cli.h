/*
 * cli.h — the fieldmesh commands (cli.c), callable from the fieldmesh executable and from a
 * running node serving its control socket.
 */
#ifndef FM_CLI_H
#define FM_CLI_H

#include "crdt/base.h"

#include <stdio.h>

typedef struct fm_node fm_node;

/* What a running node lends to commands that reach it over the control socket. */
typedef struct fm_cli_host {
    fm_replica *replica;
    fm_node *node;
} fm_cli_host;

/* Runs one command line (argv[0] is the program name) writing to out and err; returns the exit
 * status (0 ok, 1 failure, 2 usage). host NULL: the command opens the store itself, unless a
 * node runs in the directory, in which case the command is handed to it. */
int fm_cli_run(int argc, char **argv, const fm_cli_host *host, FILE *out, FILE *err);

#endif
