/* SPDX-License-Identifier: MIT */
/*
 * rawmpi.c - the raw limits of two MPI ranks, for bench/cluster: what bare
 * MPI_Send/MPI_Recv reach between rank 0 and rank 1, the floor under any
 * cluster Pool's round trip and transfer.
 *
 *   mpicc -O2 rawmpi.c -o rawmpi
 *   mpirun -n 2 ./rawmpi [ROUND_TRIPS [MIB]]
 *
 * Prints one JSON line (rank 0): pingpong_us, the mean 8-byte round trip
 * over ROUND_TRIPS (default 20,000); mb_per_s, 1 MiB messages sent by
 * rank 0 and received by rank 1 into one buffer, MIB of them (default
 * 256), and a 1-byte reply at the end.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    int rank, size, n = 20000, mib = 256;
    long v = 0;
    char *buf;
    double t0, rtt, bw;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc > 1)
        n = atoi(argv[1]);
    if (argc > 2)
        mib = atoi(argv[2]);
    if (size < 2 || n <= 0 || mib <= 0) {
        if (rank == 0)
            fprintf(stderr, "usage: mpirun -n 2 rawmpi [ROUND_TRIPS [MIB]]\n");
        MPI_Finalize();
        return 2;
    }
    buf = malloc(1 << 20);
    if (buf == NULL)
        MPI_Abort(MPI_COMM_WORLD, 1);
    memset(buf, 'x', 1 << 20);

    /* ping-pong (200 untimed first) */
    for (int pass = 0; pass < 2; pass++) {
        int count = pass == 0 ? 200 : n;
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        for (int i = 0; i < count; i++) {
            if (rank == 0) {
                MPI_Send(&v, 1, MPI_LONG, 1, 0, MPI_COMM_WORLD);
                MPI_Recv(&v, 1, MPI_LONG, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                v++;
            } else if (rank == 1) {
                MPI_Recv(&v, 1, MPI_LONG, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(&v, 1, MPI_LONG, 0, 0, MPI_COMM_WORLD);
            }
        }
        rtt = (MPI_Wtime() - t0) / count * 1e6;
    }

    /* 1 MiB messages, one way (16 untimed first) */
    for (int pass = 0; pass < 2; pass++) {
        int count = pass == 0 ? 16 : mib;
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        for (int i = 0; i < count; i++) {
            if (rank == 0)
                MPI_Send(buf, 1 << 20, MPI_BYTE, 1, 1, MPI_COMM_WORLD);
            else if (rank == 1)
                MPI_Recv(buf, 1 << 20, MPI_BYTE, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        }
        if (rank == 0)
            MPI_Recv(&v, 1, MPI_LONG, 1, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        else if (rank == 1)
            MPI_Send(&v, 1, MPI_LONG, 0, 2, MPI_COMM_WORLD);
        bw = count / (MPI_Wtime() - t0);
    }

    if (rank == 0) {
        printf("{\"workload\": \"rawmpi\", \"ranks\": %d, \"n\": %d, \"pingpong_us\": %.3f, "
               "\"mib\": %d, \"mb_per_s\": %.1f}\n", size, n, rtt, mib, bw);
        fflush(stdout);
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
