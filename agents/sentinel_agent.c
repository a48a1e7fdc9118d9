/* sentinel-agent: placeholder until the agent host lands. */
#include <stdio.h>

int main(void)
{
    fprintf(stderr, "sentinel-agent: not built yet\n");
    return 1;
}
