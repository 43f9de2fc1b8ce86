"""Everything that runs on Ray (every `import ray` of the library lives here): the cluster, the Ray Data stream and
its shard reader, the stage-1 Train loop and its resume, the stage-2 feature pass, the sweep, the monitors, and the
typed `StageInputs` that cross into Train and Tune workers."""
