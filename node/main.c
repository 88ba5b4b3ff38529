/*
 * main.c — the fieldmesh executable: every command lives in cli.c.
 */
#include "node/cli.h"

#include <sys/stat.h>

int main(int argc, char **argv)
{
    umask(077); /* the store holds private data: owner only */
    return fm_cli_run(argc, argv, NULL, stdout, stderr);
}
