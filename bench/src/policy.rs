//! `bench policy`: see the README's benchmark section.

use crate::SuiteArgs;

pub fn run(_args: &SuiteArgs) -> anyhow::Result<()> {
    anyhow::bail!("the policy suite is not built yet")
}
