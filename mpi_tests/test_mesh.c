/* The mesh: shapes, coordinates, the split rule, and that bad arguments on
 * some ranks give the same error on every rank instead of a hang. */
#include <stdio.h>
#include <string.h>

#include "common/testlib.h"

static void test_shapes_and_coords(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank();
    /* Every factorisation dp * tp * sp = size. */
    for (int dp = 1; dp <= size; dp++)
        for (int tp = 1; tp <= size / dp; tp++) {
            if (size % (dp * tp) != 0)
                continue;
            int sp = size / (dp * tp);
            mattn_mesh *m = NULL;
            assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, dp, tp, sp, &m), MATTN_OK);
            assert_non_null(m);
            int a, b, c, d, e, f;
            mattn_mesh_shape(m, &a, &b, &c);
            assert_int_equal(a, dp);
            assert_int_equal(b, tp);
            assert_int_equal(c, sp);
            mattn_mesh_coords(m, &d, &e, &f);
            assert_int_equal(f, rank % sp); /* sp fastest */
            assert_int_equal(e, (rank / sp) % tp);
            assert_int_equal(d, rank / (sp * tp));
            assert_int_equal(mattn_mesh_rank(m), rank);
            assert_int_equal(mattn_mesh_size(m), size);
            /* the mesh communicator is a duplicate, not the caller's */
            int cmp;
            MPI_Comm_compare(mattn_mesh_comm(m), MPI_COMM_WORLD, &cmp);
            assert_int_equal(cmp, MPI_CONGRUENT);
            mattn_mesh_free(m);
        }
}

static void test_bad_shape_everywhere(void **state)
{
    (void)state;
    int size = tl_size();
    mattn_mesh *m = (mattn_mesh *)1;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size + 1, &m), MATTN_ERR_ARG);
    assert_null(m);
    assert_non_null(strstr(mattn_last_error(), "ranks"));
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 0, 1, size, &m), MATTN_ERR_ARG);
    assert_int_equal(mattn_mesh_create(MPI_COMM_NULL, 1, 1, 1, &m), MATTN_ERR_ARG);
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size, NULL), MATTN_ERR_ARG);
}

static void test_bad_shape_on_one_rank(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank();
    /* The last rank alone passes a wrong shape: every rank must return the
     * same error, with the culprit's message. */
    int sp = rank == size - 1 ? size + 2 : size;
    mattn_mesh *m = NULL;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, sp, &m), MATTN_ERR_ARG);
    assert_null(m);
    /* The same message on every rank (compare a hash of it). */
    unsigned long h = 5381, lo, hi;
    for (const char *c = strstr(mattn_last_error(), "mesh"); c && *c; c++)
        h = h * 33 + (unsigned char)*c;
    MPI_Allreduce(&h, &lo, 1, MPI_UNSIGNED_LONG, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&h, &hi, 1, MPI_UNSIGNED_LONG, MPI_MAX, MPI_COMM_WORLD);
    assert_true(lo == hi);
    assert_non_null(strstr(mattn_last_error(), "mesh"));
}

static void test_split_rule(void **state)
{
    (void)state;
    /* first n % p parts get one more; parts tile [0, n) in order */
    for (int64_t n = 0; n < 40; n++)
        for (int p = 1; p <= 7; p++) {
            int64_t next = 0;
            for (int i = 0; i < p; i++) {
                int64_t s, c;
                mattn_split(n, p, i, &s, &c);
                assert_int_equal(s, next);
                assert_int_equal(c, n / p + (i < n % p ? 1 : 0));
                next = s + c;
            }
            assert_int_equal(next, n);
        }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes_and_coords),
        cmocka_unit_test(test_bad_shape_everywhere),
        cmocka_unit_test(test_bad_shape_on_one_rank),
        cmocka_unit_test(test_split_rule),
    };
    int failed = tl_run_all("mesh", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
