from dcn_ray.cli import main

main()
