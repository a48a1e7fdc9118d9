/* The product roles served by sentinel-agent, one line each; a role's code lives in
 * agents/<agent>/<role>.c. Test roles live under tests/roles/ (sentinel-test-agent). */
#include "sentinel/sn_agent.h"

extern const sn_role_t local_deployer_role;
extern const sn_role_t cloudflare_deployer_role;
extern const sn_role_t build_validator_role;
extern const sn_role_t infraguard_role;
extern const sn_role_t buildpilot_role;
extern const sn_role_t deployment_watcher_role;
extern const sn_role_t autoheal_executor_role;
extern const sn_role_t notifier_role;
extern const sn_role_t gateway_role;
extern const sn_role_t resource_validator_role;
extern const sn_role_t railway_bridge_role;
extern const sn_role_t hosting_propagator_role;
extern const sn_role_t function_handler_role;
extern const sn_role_t firebase_executor_role;
extern const sn_role_t firebase_sync_role;
extern const sn_role_t github_workflow_role;
extern const sn_role_t cloud_sync_sentinel_role;

const sn_role_t *const sn_roles[] = {
    &local_deployer_role,
    &cloudflare_deployer_role,
    &build_validator_role,
    &infraguard_role,
    &buildpilot_role,
    &deployment_watcher_role,
    &autoheal_executor_role,
    &notifier_role,
    &gateway_role,
    &resource_validator_role,
    &railway_bridge_role,
    &hosting_propagator_role,
    &function_handler_role,
    &firebase_executor_role,
    &firebase_sync_role,
    &github_workflow_role,
    &cloud_sync_sentinel_role,
    NULL,
};
