/* `mattn`: global options, the command table, and what handlers share. */
#include "cli/cli.h"

#include <cblas.h>
#include <string.h>
#include <time.h>

#include "mattn.h"

static const mattn__cli_command commands[] = {
#define MATTN__CLI_ENTRY_(name, summary, handler) {name, summary, handler},
    MATTN__CLI_COMMANDS(MATTN__CLI_ENTRY_)
#undef MATTN__CLI_ENTRY_
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

/* ------------------------------------------------------------------ streams */

static FILE *out_stream, *err_stream;

FILE *mattn__cli_out(void)
{
    return out_stream ? out_stream : stdout;
}

FILE *mattn__cli_err(void)
{
    return err_stream ? err_stream : stderr;
}

void mattn__cli_set_streams(FILE *out, FILE *err)
{
    out_stream = out;
    err_stream = err;
}

/* ------------------------------------------------------------------ shared */

int mattn__cli_agree_max(MPI_Comm comm, int code)
{
    int size = 1, all = code;
    MPI_Comm_size(comm, &size);
    if (size > 1 && MPI_Allreduce(&code, &all, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
        return MATTN__CLI_EXIT_RUNTIME;
    return all;
}

int mattn__cli_agree_parse(MPI_Comm comm, int code, void (*print_help)(FILE *out))
{
    /* help is sent as 1: above ok (0), below every usage error */
    int vote = mattn__cli_agree_max(comm, code == MATTN__CLI_HELP ? 1 : code);
    code = vote == 1 ? MATTN__CLI_HELP : vote;
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    if (code == MATTN__CLI_HELP && rank == 0)
        print_help(mattn__cli_out());
    return code;
}

double mattn__cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int mattn__cli_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int mattn__cli_root_code(MPI_Comm comm, int code)
{
    int rank = 0, size = 1, value = code;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (size == 1)
        return code;
    MPI_Request req;
    if (MPI_Ibcast(&value, 1, MPI_INT, 0, comm, &req) != MPI_SUCCESS)
        return MATTN__CLI_EXIT_RUNTIME;
    if (rank == 0) {
        MPI_Wait(&req, MPI_STATUS_IGNORE);
        return value;
    }
    /* Poll every millisecond: negligible latency, no core taken from rank 0. */
    const struct timespec nap = {0, 1000000};
    for (int done = 0;;) {
        if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return MATTN__CLI_EXIT_RUNTIME;
        if (done)
            return value;
        nanosleep(&nap, NULL);
    }
}

int mattn__cli_report(const char *cmd, int status)
{
    if (status == MATTN_OK)
        return MATTN__CLI_EXIT_OK;
    const char *detail = mattn_last_error();
    fprintf(mattn__cli_err(), "mattn %s: %s: %s\n", cmd, mattn_err_name(status),
            detail[0] ? detail : mattn_strerror(status));
    return MATTN__CLI_EXIT_RUNTIME;
}

/* ------------------------------------------------------------------ global */

static void print_help(FILE *out)
{
    fprintf(out,
            "usage: mattn [--help | --version] <command> [options]\n"
            "\n"
            "mattn computes attention softmax(scale * q k^T, masked, capped, biased) v on CPU\n"
            "(OpenBLAS) and over MPI, with the semantics of its SPEC (docs/semantics.md).\n"
            "Tensors are NumPy .npy files (float32; float64 and int64 are converted).\n"
            "\n"
            "commands:\n");
    for (size_t c = 0; c < N_COMMANDS; c++) {
        fprintf(out, "  %-8s ", commands[c].name);
        mattn__opts_wrap(out, commands[c].summary, 11, 86);
    }
    fprintf(out,
            "  %-8s %s\n"
            "\n"
            "options:\n"
            "  -h, --help   show this help and exit\n"
            "  --version    print the versions of mattn, the library, OpenBLAS (and the\n"
            "               core kernels it selected) and MPI, then exit\n"
            "\n"
            "Each command explains its options: 'mattn <command> --help'.\n"
            "Exit status: 0 success; 1 runtime error (unreadable, malformed or mismatched\n"
            "file, library error, failed --check); 2 usage error. Under mpirun every rank\n"
            "exits with the same status. Results go to stdout as 'key: value' lines;\n"
            "progress and errors go to stderr.\n",
            "help", "show the help of a command: mattn help <command>");
}

static void print_version(FILE *out)
{
    unsigned lib = mattn_version();
    fprintf(out, "mattn: %d.%d.%d\n", MATTN_VERSION_MAJOR, MATTN_VERSION_MINOR,
            MATTN_VERSION_PATCH);
    fprintf(out, "library: %u.%u.%u\n", lib >> 16, (lib >> 8) & 0xff, lib & 0xff);
    fprintf(out, "openblas_core: %s\n", openblas_get_corename());
    fprintf(out, "openblas_config: %s\n", openblas_get_config());
    char mpi[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0, major = 0, minor = 0;
    MPI_Get_library_version(mpi, &len);
    mpi[strcspn(mpi, "\r\n")] = '\0'; /* first line only */
    MPI_Get_version(&major, &minor);
    fprintf(out, "mpi: %s\n", mpi);
    fprintf(out, "mpi_standard: %d.%d\n", major, minor);
}

static const mattn__cli_command *find_command(const char *name)
{
    for (size_t c = 0; c < N_COMMANDS; c++)
        if (strcmp(commands[c].name, name) == 0)
            return &commands[c];
    return NULL;
}

static int unknown_command(int rank, const char *name)
{
    if (rank == 0) {
        FILE *err = mattn__cli_err();
        fprintf(err, "mattn: unknown command '%s' (commands:", name);
        for (size_t c = 0; c < N_COMMANDS; c++)
            fprintf(err, " %s", commands[c].name);
        fprintf(err, ", help)\n(see 'mattn --help')\n");
    }
    return MATTN__CLI_EXIT_USAGE;
}

/* Every rank sees the same argv, so every rank takes the same branch here;
 * the handlers agree on anything that could differ. */
int mattn__cli_main(MPI_Comm comm, int argc, char **argv)
{
    int rank = 0, code;
    MPI_Comm_rank(comm, &rank);
    FILE *out = mattn__cli_out();
    if (argc < 2) {
        if (rank == 0)
            fprintf(mattn__cli_err(), "usage: mattn [--help | --version] <command> [options]\n"
                                      "(see 'mattn --help')\n");
        return MATTN__CLI_EXIT_USAGE;
    }
    const char *first = argv[1];
    if (strcmp(first, "--help") == 0 || strcmp(first, "-h") == 0) {
        if (rank == 0)
            print_help(out);
        code = MATTN__CLI_EXIT_OK;
    } else if (strcmp(first, "--version") == 0) {
        if (rank == 0)
            print_version(out);
        code = MATTN__CLI_EXIT_OK;
    } else if (strcmp(first, "help") == 0) {
        if (argc < 3) {
            if (rank == 0)
                print_help(out);
            return MATTN__CLI_EXIT_OK;
        }
        const mattn__cli_command *c = find_command(argv[2]);
        if (c == NULL)
            return unknown_command(rank, argv[2]);
        char *help_argv[] = {argv[2], (char *)"--help", NULL};
        code = c->run(comm, 2, help_argv);
    } else if (first[0] == '-') {
        if (rank == 0)
            fprintf(mattn__cli_err(), "mattn: unknown option %s (before the command)\n"
                                      "(see 'mattn --help')\n", first);
        code = MATTN__CLI_EXIT_USAGE;
    } else {
        const mattn__cli_command *c = find_command(first);
        code = c ? c->run(comm, argc - 1, argv + 1) : unknown_command(rank, first);
    }
    fflush(mattn__cli_out());
    fflush(mattn__cli_err());
    return code;
}
