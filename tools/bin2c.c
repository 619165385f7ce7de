/* bin2c NAME < file > file.c: embeds a file as `const char NAME[]` and
 * `const size_t NAME_len`, so lua/ sources ship inside the library. */
#include <stdio.h>

int main(int argc, char **argv)
{
    int c;
    unsigned long n = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: bin2c NAME < input > output.c\n");
        return 2;
    }
    printf("#include <stddef.h>\nconst char %s[] = {", argv[1]);
    while ((c = getchar()) != EOF) {
        printf("%s%d,", n % 20 == 0 ? "\n" : "", c);
        n++;
    }
    if (ferror(stdin)) {
        perror("bin2c: read");
        return 1;
    }
    printf("0};\nconst size_t %s_len = %lu;\n", argv[1], n);
    return fflush(stdout) == 0 ? 0 : 1;
}
