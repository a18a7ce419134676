"""The Piccolo app `costs`: it owns the price catalog tables and ships their migrations."""

from pathlib import Path

from piccolo.conf.apps import AppConfig

from aiserver.costs.tables import (
    AiCostMetadata,
    AiCostOverride,
    AiCostRefreshRun,
    AiModelAliasHistory,
    AiModelCost,
)

APP_CONFIG = AppConfig(
    app_name="costs",
    migrations_folder_path=str(Path(__file__).parent / "piccolo_migrations"),
    table_classes=[
        AiCostMetadata,
        AiModelCost,
        AiModelAliasHistory,
        AiCostOverride,
        AiCostRefreshRun,
    ],
    migration_dependencies=[],
    commands=[],
)
