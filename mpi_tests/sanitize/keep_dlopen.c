/* Preloaded only in sanitizer runs: OpenMPI dlcloses its plugins at
 * MPI_Finalize, after which LeakSanitizer cannot name the module that
 * allocated their (never freed) memory, so no suppression can match it.
 * Keeping every library mapped lets mpi_tests/sanitize/lsan.supp name
 * OpenMPI's own libraries, while leaks in mattn code are still reported. */
int dlclose(void *handle)
{
    (void)handle;
    return 0;
}
