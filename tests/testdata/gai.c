/* gai resolves a name with the C library's getaddrinfo and prints each
 * distinct address, sorted. Built with musl-gcc by the DNS test to check
 * that musl accepts sockmesh's captured DNS replies. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }

int main(int argc, char **argv)
{
	struct addrinfo hints = {0}, *res, *ai;
	char *out[64];
	int n = 0, rc;

	if (argc != 2)
		return 2;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(argv[1], NULL, &hints, &res);
	if (rc) {
		printf("error: %s\n", gai_strerror(rc));
		return 1;
	}
	for (ai = res; ai && n < 64; ai = ai->ai_next) {
		char buf[INET6_ADDRSTRLEN];
		void *p = ai->ai_family == AF_INET ? (void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
						   : (void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
		int dup = 0;

		inet_ntop(ai->ai_family, p, buf, sizeof(buf));
		for (int i = 0; i < n; i++)
			dup |= !strcmp(out[i], buf);
		if (!dup)
			out[n++] = strdup(buf);
	}
	qsort(out, n, sizeof(out[0]), cmp);
	for (int i = 0; i < n; i++)
		printf("%s%s", i ? " " : "", out[i]);
	printf("\n");
	return 0;
}
