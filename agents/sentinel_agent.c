/* sentinel-agent: runs one role of the mesh in this process. The role list comes from
 * the binary it is linked into (agents/roles.c for the product, tests/roles/ for the
 * test agent); everything else is the runtime's (common/src/sn_agent.c). */
#include "sentinel/sn_agent.h"

extern const sn_role_t *const sn_roles[];

int main(int argc, char **argv)
{
    return sn_agent_main(argc, argv, sn_roles);
}
