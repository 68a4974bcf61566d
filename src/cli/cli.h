/* The `mattn` command: a table of sub-commands and what they share.
 *
 * A command is one file with a handler plus one line in MATTN__CLI_COMMANDS.
 * A handler receives argv starting at the command's name and returns the
 * process exit status: 0 success, 1 runtime error, 2 usage error. It is
 * collective over comm: every rank calls it with the same arguments and gets
 * the same status back. Normal output ("key: value" lines, help) goes to
 * mattn__cli_out() and diagnostics to mattn__cli_err(), on rank 0 only. */
#ifndef MATTN_CLI_CLI_H
#define MATTN_CLI_CLI_H

#include <mpi.h>
#include <stdio.h>

#include "cli/args.h"

typedef int (*mattn__cli_handler)(MPI_Comm comm, int argc, char **argv);

typedef struct mattn__cli_command {
    const char *name;
    const char *summary; /* one line for `mattn --help` */
    mattn__cli_handler run;
} mattn__cli_command;

/* X(name, summary, handler), in the order `mattn --help` lists them. */
#define MATTN__CLI_COMMANDS(X)                                                        \
    X("run", "one attention forward pass (any operator, ring included) on .npy files or a " \
             "synthetic problem; timing, GFLOP/s and a float64 check",               \
      mattn__cli_run)                                                                  \
    X("grad", "the backward pass (dq, dk, dv, dsinks, dbias) of any operator on .npy " \
              "files or a synthetic problem, split over the ranks under mpirun",          \
      mattn__cli_grad)                                                                 \
    X("decode", "ar, ragged or paged decode over a KV cache (.npy or synthetic), split " \
                "over the ranks under mpirun; tokens/s, GB/s and a float64 check",        \
      mattn__cli_decode)

#define MATTN__CLI_DECLARE_(name, summary, handler) \
    int handler(MPI_Comm comm, int argc, char **argv);
MATTN__CLI_COMMANDS(MATTN__CLI_DECLARE_)
#undef MATTN__CLI_DECLARE_

/* The whole command line; argv[0] is the program name. Collective over comm. */
int mattn__cli_main(MPI_Comm comm, int argc, char **argv);

/* Output streams (stdout and stderr unless set; tests capture them). */
FILE *mattn__cli_out(void);
FILE *mattn__cli_err(void);
void mattn__cli_set_streams(FILE *out, FILE *err);

/* Every rank gets the largest of the ranks' codes (e.g. usage verdicts). */
int mattn__cli_agree_max(MPI_Comm comm, int code);
/* The parse verdict every rank acts on (ranks see the same argv unless a
 * launcher mangles it): a usage error anywhere beats help, help beats ok.
 * Prints the help on rank 0 when that is the verdict. Returns
 * MATTN__CLI_EXIT_OK to go on, MATTN__CLI_HELP, or the usage exit code. */
int mattn__cli_agree_parse(MPI_Comm comm, int code, void (*print_help)(FILE *out));

/* Monotonic seconds, for timing repeated calls. */
double mattn__cli_now(void);
/* qsort order of doubles. */
int mattn__cli_cmp_double(const void *a, const void *b);
/* Every rank gets rank 0's code. Ranks other than 0 wait without spinning:
 * rank 0 may compute for minutes, and a blocking MPI wait would busy-poll a
 * core it needs. */
int mattn__cli_root_code(MPI_Comm comm, int code);

/* Prints "mattn <cmd>: MATTN_ERR_X: <mattn_last_error()>" to the error stream
 * and returns the exit status for a library status (0 for MATTN_OK, else 1). */
int mattn__cli_report(const char *cmd, int status);

#endif
