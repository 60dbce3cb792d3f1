/* TEMPORARY stub until its issue lands: replaced by the real command. */
#include "cli/cli.h"
int cmd_generate(int argc, char **argv) { (void)argc; return cli_error(argv[0], "not implemented yet"); }
