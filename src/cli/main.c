/* The mattn program: everything but MPI start-up lives in mattn__cli_main, so
 * the tests run the command in-process. */
#include <mpi.h>

#include "cli/cli.h"

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int code = mattn__cli_main(MPI_COMM_WORLD, argc, argv);
    MPI_Finalize();
    return code;
}
